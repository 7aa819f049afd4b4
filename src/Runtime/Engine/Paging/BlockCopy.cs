namespace Kiln.Engine.Paging;

/// <summary>
/// A copy-on-write the caller must carry out before writing: copy every layer's keys and values of block
/// <paramref name="SourceBlockId"/> into block <paramref name="DestinationBlockId"/>.
/// </summary>
public readonly record struct BlockCopy(int SourceBlockId, int DestinationBlockId);
