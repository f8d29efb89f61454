"""OpenAI Batch API files on local models: parse input lines into hfqueue work, build output lines."""
