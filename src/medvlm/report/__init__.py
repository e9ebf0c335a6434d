"""The study report: collect runs (DVC experiments or git revisions) into paper-style tables and plots."""
