"""Checks of the edges: the admin HTTP API and the dashboard, when their URLs are given."""

from __future__ import annotations

from cachelib.verify.checks import Check, Run

API_ROUTES = ("/api/admin/cache/metrics", "/api/admin/cache/maintenance")


def api_checks(run: Run, api_url: str | None, api_key: str | None) -> None:
    group = "api"
    if not api_url:
        run.add(Check("admin API", group, "skipped", "pass --api URL --api-key KEY to check it", required=False))
        return
    if not api_key:
        run.add(Check("admin API", group, "fail", "--api given without --api-key",
                      "python -m cachelib api-key create --name verify --role viewer, then pass --api-key"))
        return
    import httpx

    base = api_url.rstrip("/")
    with httpx.Client(timeout=10.0, follow_redirects=False) as client:
        for route in API_ROUTES:
            for with_key, expected in ((True, 200), (False, 401)):
                name = f"GET {route} {'with' if with_key else 'without'} key"
                headers = {"Authorization": f"Bearer {api_key}"} if with_key else {}
                try:
                    response = client.get(base + route, headers=headers)
                except httpx.HTTPError as exc:
                    run.add(Check(name, group, "fail", f"cannot reach {base}: {type(exc).__name__}: {exc}",
                                  "start the API: python -m cachelib api --host 127.0.0.1 --port 8000"))
                    continue
                if response.status_code == expected:
                    run.add(Check(name, group, "pass", f"{response.status_code} as expected"))
                    continue
                fix = ("check the key (python -m cachelib api-key list); a revoked key answers 401" if with_key
                       else "the route must refuse requests without a key: this is not pgcache-admin's API "
                       "or it sits behind a proxy that adds credentials")
                run.add(Check(name, group, "fail", f"answered {response.status_code}, expected {expected}", fix))


def dashboard_checks(run: Run, dashboard_url: str | None) -> None:
    group = "dashboard"
    if not dashboard_url:
        run.add(Check("dashboard", group, "skipped", "pass --dashboard URL to check it", required=False))
        return
    import httpx

    base = dashboard_url.rstrip("/")
    start = "python -m cachelib serve --port 8501 (or make run)"
    with httpx.Client(timeout=10.0, follow_redirects=True) as client:
        try:
            page = client.get(base + "/")
        except httpx.HTTPError as exc:
            run.add(Check("dashboard page", group, "fail", f"cannot reach {base}: {type(exc).__name__}: {exc}",
                          f"start it: {start}"))
            return
        if page.status_code != 200 or "streamlit" not in page.text.lower():
            run.add(Check("dashboard page", group, "fail",
                          f"{base}/ answered {page.status_code} and is "
                          f"{'a Streamlit page' if 'streamlit' in page.text.lower() else 'not a Streamlit page'}",
                          f"point --dashboard at the dashboard's address; start it: {start}"))
        else:
            run.add(Check("dashboard page", group, "pass", f"{base}/ answers 200 with the Streamlit app"))
        try:
            health = client.get(base + "/_stcore/health")
            healthy = health.status_code == 200 and health.text.strip() == "ok"
        except httpx.HTTPError:
            healthy = False
        if healthy:
            # Streamlit renders the login form in the browser over a websocket; plain HTTP cannot see it.
            run.add(Check("dashboard health", group, "pass", "/_stcore/health answers ok (the login form itself is "
                          "rendered client-side: check it in a browser)"))
        else:
            run.add(Check("dashboard health", group, "fail", f"{base}/_stcore/health did not answer ok",
                          "see the dashboard's log; a proxy must pass /_stcore/ and websockets through"))

