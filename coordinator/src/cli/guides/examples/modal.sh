# One-time setup, with Modal's own CLI (credentials, and the API key as a Modal secret):
#   modal token set
#   modal secret create anthropic-api-key ANTHROPIC_API_KEY=sk-ant-...
# then Parhelia's checks: credentials, SDK, secret, volume, agent, image; and a sandbox's view
# $ parhelia modal setup
# $ parhelia modal init-volume
# $ parhelia modal health-check

# The [modal] settings in force and where each comes from
parhelia config show

# Plan a task on Modal: what would start, and what it may cost (nothing is launched)
parhelia task create "Run the full test suite" --backend modal --dry-run
parhelia task create "Run the full test suite" --backend modal --timeout 1h --estimate-only

# For real: your workspace goes with it; the result comes back as a local branch
# $ parhelia submit "Run the full test suite" --backend modal --workspace . --sync
# $ parhelia session pull task-1a2b3c4d
# A local session moves to Modal (its checkpoints are copied to the volume first):
# $ parhelia resume sess-5e6f7a8b --backend modal
