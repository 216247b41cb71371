"""rsync's ``-i`` (``--itemize-changes``) lines: which regular files a transfer sent or received.

    rsync 3      ">f+++++++++ name"   YXcstpoguax (its rsync.1)
    rsync 2.6.9  ">f+++++++ name"     YXcstpogz (its rsync.1)
    openrsync    ">f+++++++ name"     (its tests match '^.[dfLS]\\+{7,} ')

'<' is a file sent (a push), '>' one received (a pull); '.' an item not transferred (only an
attribute set), 'c' a local change (a link, a folder), '*' a message ('*deleting'). Pure parsing;
the sync launcher's ``pass_derived`` is its bash twin.
"""
import re

LINE = re.compile(r"^(?P<way>[<>])f[.+?a-zA-Z]{7,9} (?P<name>.+)$")


def transferred(output, way):
    """Names of the regular files ``output`` itemizes as sent (``way`` '<') or received ('>')."""
    found = (LINE.match(line) for line in re.split(r"[\r\n]", output))
    return [m["name"] for m in found if m and m["way"] == way]
