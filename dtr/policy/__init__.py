"""What the caller may do: the Casbin policy decision point. Never imports api or core."""
