"""The tamper-evident audit log behind ``core.hooks.EventSink``. Never imports api or core."""
