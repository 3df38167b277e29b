"""Who is calling: accounts, secrets, credential checks, login rate limits, scopes and the
registry's bearer tokens. Never imports api, core, policy, app or cli.

    principal    Principal (the caller every later layer sees)
    passwords    argon2id password hashes; random secrets stored as SHA-256; constant-time compare
    accounts     users, robots, organizations, teams, personal access and refresh tokens (rows)
    ratelimit    LoginLimiter: failed-login counters shared by every replica (database rows)
    credentials  CredentialVerifier: Basic / PAT / refresh token → Principal
    scopes       Docker scope grammar; personal-access-token scope restrictions
    tokens       ES256 JWTs: signing keys (kid, JWKS), TokenIssuer, TokenVerifier
"""
