"""Census stage: local stores in the CELLxGENE census layout (real and synthetic), opening them."""
