"""The paper's studies beyond its tables: the 2-D landscape, JUMP-tau's trade-off, the JUMP replay."""
