"""Several Sobot companies from one deployment: the tenants file and the tenants it configures."""
