"""Protocol adapters: each turns its wire format into the internal request type and back."""
