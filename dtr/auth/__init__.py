"""Who is calling (users, robots, tokens, OIDC). Never imports api, core or policy."""
