"""HTTP: the Flask app factory, boot endpoints, the REST API and the server."""
