"""Lightning plumbing shared by every stage that trains: devices and precision (``devices.py``), progress
lines (``progress.py``). The lightly host's runner and the linear probe use it; it imports no host."""
