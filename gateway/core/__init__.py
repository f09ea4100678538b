"""The internal request/response types and the error hierarchy shared by every stage."""
