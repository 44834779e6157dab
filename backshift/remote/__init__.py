"""Remote repositories: `ssh://` URLs, the framed protocol, its transports, client and server."""
