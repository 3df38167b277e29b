"""Content trust: the signing gate behind ``core.hooks.PushGate``. Never imports api."""
