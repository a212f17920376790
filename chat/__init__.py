"""The chat data plane: IRC edges, the clue ingestion service, the exchange."""
