#!/bin/bash
# Where the engine under a memory cap aborts (twenty-seventh/twenty-eighth sessions: SIGABRT, both pools): the
# test's own script (test/test_graphs.py _OOM_ENGINE_SCRIPT) run on a tiny bundle once per pool and once without
# graphs (VARIANTS="shared per_graph none"), each child's whole stderr (faulthandler's stacks of every thread) in $OUT/oom_<variant>.err
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 TORCH_SHOW_CPP_STACKTRACES=1 TORCH_EXTENSIONS_DIR=$PWD/.tcache/torch_ext
B=$(mktemp -d)/tiny
python3 -c "
import sys; sys.path.insert(0, 'test')
from var_gen_ros.infinity import tiny_config
from var_gen_ros.infinity.tiny import make_random_bundle
print(make_random_bundle(sys.argv[1], tiny_config(False), seed=0))" $B 2>/dev/null
python3 -c "
import sys; sys.path.insert(0, 'test')
import test_graphs as t
open(sys.argv[1], 'w').write(t._OOM_ENGINE_SCRIPT)
open(sys.argv[2], 'w').write(t.PROMPT)" $B/oom.py $B/prompt.txt
for v in ${VARIANTS:-shared per_graph}; do
  S=$B/oom.py
  [ "$v" = none ] && S=$B/oom_none.py && sed -e 's/g.cuda_graphs, g.graph_pool = True, pool/g.cuda_graphs = False/' \
    -e 's/^assert gr.capture.*$//' $B/oom.py > $S
  timeout 200 python3 $S $B $v "$(cat $B/prompt.txt)" > $OUT/oom_$v.out 2> $OUT/oom_$v.err
  echo "$v rc $?"; tail -3 $OUT/oom_$v.out
  grep -v "^Extension modules" $OUT/oom_$v.err | grep -B2 -A25 -m3 "Fatal\|Thread 0x\|Current thread\|terminate\|what()" | head -80
done
