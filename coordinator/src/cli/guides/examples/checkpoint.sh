# A task that changes files: each turn's end is checkpointed
TASK=$(parhelia submit "Write hello.txt" | head -n 1)
parhelia task watch "$TASK"
parhelia checkpoint list "$TASK"

# The first and the latest checkpoint (the id is the list's first column)
FIRST=$(parhelia checkpoint list "$TASK" | awk 'NR == 2 {print $1}')
LAST=$(parhelia checkpoint list "$TASK" | awk 'END {print $1}')
parhelia checkpoint show "$LAST"
parhelia checkpoint diff "$FIRST" "$LAST"

# Continue the conversation on a fresh container, from the latest checkpoint
parhelia resume "$TASK" -m "Now write bye.txt too"
parhelia task watch "$TASK"

# Undo what the resumed session did: back to $LAST (the current state is saved first)
parhelia checkpoint rollback "$LAST" --yes
parhelia c list "$TASK"

# A running session can be checkpointed by hand, with a message:
# $ parhelia checkpoint create "$TASK" -m "Before the big refactor"
