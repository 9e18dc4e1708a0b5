broker_url = "redis://localhost:6379/0"
