"""Runnable jobs (not part of the installed package): benchmark and paper-table runners, figures, k8s templates."""
