"""`lastro dev up|down|status|logs`: the local stack as processes under `.dev/`."""
