"""What every HTTP surface uses to handle a request: the caller's identity (auth), capped
bodies (body), errors turned into answers (error_responses), the header cap
(header_guard), client hang-ups (disconnect) and the OpenAPI builder (openapi_doc)."""
