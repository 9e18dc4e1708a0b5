"""Local simulator of i'mport's (PortOne V1) cash-receipt REST API, and of PortOne V2's under
/portone; see docs/sandbox.md.

Importing the package starts nothing: run `iamport-sandbox` or `python -m iamport_sandbox`.
"""
