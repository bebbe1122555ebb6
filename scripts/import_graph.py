"""Import graph of ttfnet_lightning: circles (strongly connected modules) and the five largest modules."""
import sys
from pathlib import Path
import grimp
g = grimp.build_graph("ttfnet_lightning")
mods = sorted(g.modules)
adj = {m: set(g.find_modules_directly_imported_by(m)) for m in mods}
# Tarjan
index, low, stack, on, sccs, i = {}, {}, [], set(), [], [0]
sys.setrecursionlimit(10000)
def strong(v):
    index[v] = low[v] = i[0]; i[0] += 1; stack.append(v); on.add(v)
    for w in adj[v]:
        if w not in index:
            strong(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 1: sccs.append(sorted(comp))
for m in mods:
    if m not in index: strong(m)
print(f"{len(mods)} modules, {sum(len(v) for v in adj.values())} imports; circles (modules importing each other, packages' __init__ included):")
for c in sccs:
    print(f"  {len(c)}: " + ", ".join(x.replace('ttfnet_lightning.', '') for x in c))
if not sccs: print("  none")
src = Path(sys.argv[1])
sizes = sorted(((len(p.read_text().splitlines()), str(p.relative_to(src))) for p in src.rglob("*.py")), reverse=True)[:5]
print("five largest modules: " + ", ".join(f"{n} {p}" for n, p in sizes))
