"""Persona tests: every OCI, admin and token route exercised as each persona (owner,
maintainer, developer, reader, auditor, robot, helpless user, anonymous, administrator)
against the expectation table ``expectations.csv``; a meta-test keeps the table complete.
"""
