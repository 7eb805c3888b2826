"""Runs scim2-tester (an independent RFC 7643/7644 compliance checker from PyPI) against
aalgate's SCIM endpoint: every check must be SUCCESS, none skipped.

Usage: python3 compliance.py BASE_URL TOKEN
Prints one line per check: STATUS title [resource type]: reason.
"""

import sys

import httpx2
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import Status, check_server


def main() -> int:
    base, token = sys.argv[1], sys.argv[2]
    client = SyncSCIMClient(
        httpx2.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    )
    results = check_server(client)
    failed = 0
    for r in results:
        kind = f" [{r.resource_type}]" if getattr(r, "resource_type", None) else ""
        print(f"{r.status.name} {r.title}{kind}: {(r.reason or '').splitlines()[0] if r.reason else ''}")
        if r.status != Status.SUCCESS:
            failed += 1
    print(f"{len(results)} checks, {failed} not successful")
    return 1 if failed or not results else 0


if __name__ == "__main__":
    sys.exit(main())
