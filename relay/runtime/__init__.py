"""What every part runs on: the uvicorn `server`, background `tasks`, and `metrics`."""
