"""The customer portal: designated users of a customer sign in with an emailed link, see and confirm or
defer their maintenance, and open and follow their support cases.

Starlette app (`app.create_app`) served by uvicorn (`server.serve`, `upkeep portal serve`); pages are
server-rendered Jinja2 (`templates/portal/`) and need no JavaScript. Security lives in `security`
(headers, CSRF, form parsing, rate limits) and `signin` (signed single-use links, sessions).
"""
