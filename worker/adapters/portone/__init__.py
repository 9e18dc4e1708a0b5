"""The PortOne V2 adapter: its client, its answers and its shapes."""
