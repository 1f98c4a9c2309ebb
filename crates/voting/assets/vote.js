// Enhanced in a later change: posts to /api/vote without a reload.
