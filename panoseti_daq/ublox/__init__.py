"""UbloxControl: configure a u-blox ZED-F9T timing receiver and stream its UBX messages.

`protocol` and `settings` are loop-free (bytes and values in, values out); the port owner, the
service and the clients build on them.
"""
