"""The chatops control plane: cluster file, supervisor, HAProxy configs, and (later) the Flask app."""
