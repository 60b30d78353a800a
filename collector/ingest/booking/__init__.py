"""Booking cumulative energy registers (docs/registers.md).

``registers`` decides what each reading books (pure); ``state`` holds a device's state and
the cache of it; ``sql`` the statements; ``booker`` writes a batch (the writer's one way to
write); ``history`` books late readings from their neighbourhood; ``rebooker`` works off the
devices marked dirty.
"""
