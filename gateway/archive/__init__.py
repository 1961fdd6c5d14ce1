"""The archive's index and query engine: what the archive destination stored, by patient,
study, series and instance, in the gateway's database, so Q/R (C-FIND, C-MOVE, C-GET),
DICOMweb and retention never walk the file tree.

    levels.py     which attribute belongs to which level; the compact copy of each level
    index.py      ArchiveIndex (add, get, remove), StoredInstance, reindex of a folder
    query.py      find() for C-FIND, locate() for C-MOVE / C-GET, QueryError
    retention.py  deletion by age, size and free disk; protected studies
"""
