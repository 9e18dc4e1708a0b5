"""The pure core: the rules of a job, with no I/O (issue 13).

Nothing here imports redis, celery, kombu, requests, click or aiohttp (lint-imports
keeps it so), so a module of the core can be read and tested without a broker, a
Redis or an HTTP server, and every layer above may import it.
"""
