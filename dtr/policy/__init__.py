"""What the caller may do: the Casbin policy decision point (``enforcer``), the policy data
and its validation (``admin``), and the vocabulary (``actions``). Never imports api or core.
"""
