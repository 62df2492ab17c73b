# Record three tasks without starting them (held)
A=$(parhelia submit "Write a.txt" --no-dispatch | head -n 1)
B=$(parhelia submit "Write b.txt" --no-dispatch | head -n 1)
C=$(parhelia submit "Write c.txt" --no-dispatch | head -n 1)
parhelia task list --status held

# What would start now, and what would wait (orchestrator.max_concurrent_workers)
parhelia task dispatch --dry-run

# Start them together; any over the limit wait in the queue and start as others end
parhelia task dispatch "$A" "$B" "$C"

# Follow each to its end (the exit status is the task's outcome)
parhelia task watch "$A"
parhelia task watch "$B"
parhelia task watch "$C"
parhelia t list
