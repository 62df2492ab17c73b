# Claude Code starts Parhelia's MCP server over stdio:
# $ parhelia mcp-server
# Register it in your project's .mcp.json:
#   { "mcpServers": { "parhelia": { "command": "parhelia", "args": ["mcp-server"] } } }
# or with Claude Code's CLI:  claude mcp add parhelia -- parhelia mcp-server
# or let Parhelia install the server, slash commands and skills:
# $ parhelia integrate claude-code --dry-run

# Each tool has a CLI twin that prints the same data as JSON:
parhelia status --json                    # parhelia_health
parhelia task list --json                 # parhelia_task_list
parhelia container list --json            # parhelia_containers
parhelia events list --limit 5 --json     # parhelia_events_list
parhelia checkpoint list --json           # parhelia_checkpoint_list
parhelia budget show --json               # parhelia_budget_status
parhelia reconciler status --json         # parhelia_reconciler_status
