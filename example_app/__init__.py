"""A FastAPI app wired with KafkaLogMiddleware, for the demo and the README."""
