// Placeholder; replaced by the browser client.
