# A global ceiling of $50, and $10 per UTC day
parhelia budget set 50.00 --daily 10
parhelia budget show

# The cost range of a task before running it (nothing starts)
parhelia task create "Refactor the auth module" --timeout 30m --estimate-only

# A task with its own cap: stopped (and checkpointed) when it has cost $2
TASK=$(parhelia submit "Write hello.txt with a greeting" --max-cost 2.00 | head -n 1)
parhelia task watch "$TASK"

# Raise that task's cap (a task its cap stopped can then be resumed)
parhelia budget set --task "$TASK" --max-cost 5

# Where the money went: per day, per task; the rows add up to the total
parhelia budget history
parhelia budget history --by task --since 7d
parhelia b show --json
