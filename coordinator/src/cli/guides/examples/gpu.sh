# GPU tasks run on Modal: a local run needs the GPU on this machine (else E114).
# Every command below launches nothing: price and plan first.

# What would an A100 run of up to two hours cost?
parhelia task create "Train for 10 epochs" --gpu A100 --timeout 2h --backend modal --estimate-only

# A small job does not need a big GPU: a T4 costs a fraction of an H100
parhelia task create "Run one prediction" --gpu T4 --timeout 10m --backend modal --estimate-only

# Exactly what would start: an A10G sandbox with 32 GiB of memory
parhelia task create "Train the model" --gpu A10G --memory 32 --backend modal --dry-run

# Two H100s, stopped (and checkpointed) when the task has cost $20
parhelia task create "Fine-tune the model" --gpu H100:2 --max-cost 20 --backend modal --dry-run

# Then for real (Modal set up first: parhelia examples modal), and look in when you like:
# $ parhelia submit "Train the model for 10 epochs" --gpu A100 --backend modal --max-cost 20
# $ parhelia attach task-1a2b3c4d
