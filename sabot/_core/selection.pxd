# Module map of sabot._core.selection: the filter kernel. A boolean mask is read into
# 64-bit words (validity ANDed in) and each fixed-width column without nulls is compacted
# word by word without the GIL; other columns go through Arrow's filter.
