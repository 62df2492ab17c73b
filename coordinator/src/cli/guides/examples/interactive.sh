# Claude Code's terminal UI in a session that waits for you between turns
TASK=$(parhelia submit "Write notes.txt, then wait for me" --interactive | head -n 1)

# Step in: a live terminal (Ctrl-b d detaches; the session keeps running)
# $ parhelia attach "$TASK"
# $ parhelia session attach "$TASK" --read-only

# Without a terminal: type a message into it, then read its events and screen
parhelia session send "$TASK" "Also write todo.txt"
parhelia session logs "$TASK" -n 20

# End it: a final checkpoint, then its task is cancelled
parhelia session kill "$TASK"
parhelia task show "$TASK"
