#!/usr/bin/env python3
"""check_layers.py - the library's source files call each other without cycles.

Reads the symbol tables of the objects in a static archive (nm): an object
that leaves a symbol undefined which another object of the archive defines
calls into that object. Prints the files as layers (each file one above the
highest file it calls) and exits 1 naming the files of any cycle and the
calls that close it, 2 on bad usage.

usage: check_layers.py ARCHIVE        e.g. build/libbatpak.a
"""
import subprocess
import sys


def symbols(archive):
    out = subprocess.run(["nm", "-A", "--defined-only", archive], capture_output=True, text=True, check=True).stdout
    undef = subprocess.run(["nm", "-A", "--undefined-only", archive], capture_output=True, text=True,
                           check=True).stdout
    defined, used = {}, {}
    for line in out.splitlines():
        head, _, rest = line.rpartition(":")
        parts = rest.split()
        if len(parts) != 3 or parts[1] not in "TDBR":
            continue
        obj = head.split(":")[-1]
        defined[parts[2]] = obj
    for line in undef.splitlines():
        head, _, rest = line.rpartition(":")
        parts = rest.split()
        if len(parts) != 2 or parts[0] != "U":
            continue
        obj = head.split(":")[-1]
        used.setdefault(obj, set()).add(parts[1])
    return defined, used


def sccs(nodes, edges):
    """Tarjan's strongly connected components, iteratively."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            nxt = next(it, None)
            if nxt is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    out.append(sorted(comp))
                continue
            if nxt not in index:
                index[nxt] = low[nxt] = counter[0]
                counter[0] += 1
                stack.append(nxt)
                on.add(nxt)
                work.append((nxt, iter(sorted(edges.get(nxt, ())))))
            elif nxt in on:
                low[v] = min(low[v], index[nxt])
    return out


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    archive = argv[1]
    members = subprocess.run(["ar", "t", archive], capture_output=True, text=True, check=True).stdout.split()
    defined, used = symbols(archive)
    edges = {}
    for obj, syms in used.items():
        for sym in syms:
            callee = defined.get(sym)
            if callee and callee != obj:
                edges.setdefault(obj, set()).add(callee)
    nodes = sorted(set(members))
    bad = [c for c in sccs(nodes, edges) if len(c) > 1]
    # Layers: a file's level is one above the highest file it calls.
    level = {}
    def lvl(n, seen=()):
        if n in level:
            return level[n]
        if n in seen:
            return 0
        level[n] = 0
        v = 1 + max((lvl(m, seen + (n,)) for m in edges.get(n, ())), default=-1)
        level[n] = v
        return v
    for n in nodes:
        lvl(n)
    for l in range(max(level.values(), default=0) + 1):
        names = [n.removesuffix(".c.o") for n in nodes if level[n] == l]
        if names:
            print(f"layer {l}: {' '.join(names)}")
    for c in bad:
        print("cycle: " + " <-> ".join(n.removesuffix(".c.o") for n in c), file=sys.stderr)
        for a in c:
            for b in sorted(edges.get(a, ())):
                if b in c:
                    calls = sorted(s for s in used[a] if defined.get(s) == b)
                    print(f"  {a.removesuffix('.c.o')} -> {b.removesuffix('.c.o')}: {' '.join(calls[:6])}",
                          file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
