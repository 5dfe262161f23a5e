"""The HTTP shape of the functions: routeKey dispatch, answers, redirects, cookies, the popup page
and input validation."""
