#!/usr/bin/env python3
"""Turn a text file into a C string constant (used at build time)."""
import sys

name, src, dst = sys.argv[1], sys.argv[2], sys.argv[3]
data = open(src, 'rb').read()
with open(dst, 'w') as out:
    out.write('/* Generated from %s by tools/embed_text.py. */\n' % src.split('/')[-1])
    out.write('const char %s[] =\n' % name)
    for line in data.decode('utf-8').splitlines(keepends=True):
        esc = line.replace('\\', '\\\\').replace('"', '\\"').replace('\n', '\\n')
        out.write('\t"%s"\n' % esc)
    out.write('\t"";\n')
