"""Shared by every suite under tests/. pytest puts this directory on the import path (rootdir conftest,
prepend mode), so suites import `support.*`; the rampart package itself is installed (editable)."""
