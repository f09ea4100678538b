"""mTLS contexts, peer identity, authorization, and the development PKI."""
