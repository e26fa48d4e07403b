"""Development and test stack: dev TLS certificates, the test IdP, HAProxy and sample upstreams."""
