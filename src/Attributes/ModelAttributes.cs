using System;

namespace Kiln
{
    /// <summary>Marks a partial class as a Kiln model definition: the source generator compiles its [Forward] method.</summary>
    [AttributeUsage(AttributeTargets.Class, Inherited = false)]
    public sealed class ModelAttribute : Attribute
    {
        public ModelAttribute(string architecture) => Architecture = architecture;

        /// <summary>The architecture name the model file must declare (GGUF <c>general.architecture</c>), e.g. "llama".</summary>
        public string Architecture { get; }

        /// <summary>
        /// The tokenizer the model was trained with, as GGUF names it in <c>tokenizer.ggml.model</c> ("llama" for
        /// SentencePiece, "gpt2" for byte-level BPE). When set, a file that states another is rejected at load.
        /// </summary>
        public string? Tokenizer { get; set; }

        /// <summary>
        /// What kind of model the forward computes: a <see cref="ModelKind.Decoder"/> (a KV cache, the default) or an
        /// <see cref="ModelKind.Encoder"/> (no cache: each step holds whole sequences).
        /// </summary>
        public ModelKind Kind { get; set; }
    }

    /// <summary>The kinds of model a definition can be; the kind decides what a step and its attention are.</summary>
    public enum ModelKind
    {
        /// <summary>
        /// Sequences grow over steps: attention writes each step's keys and values into a (paged) KV cache and reads
        /// them back in later steps.
        /// </summary>
        Decoder = 0,

        /// <summary>
        /// No KV cache: a step holds whole sequences, packed one after another without padding, and attention reads the
        /// step's own keys and values, confined to each sequence. Every Ops.Attention states <c>causal</c>.
        /// </summary>
        Encoder = 1,
    }

    /// <summary>
    /// A hyperparameter bound from the model file's metadata. The key may contain "{arch}", replaced by the
    /// architecture name. When the key is absent the field's initializer (its default) is kept, unless
    /// <see cref="Required"/> is true.
    /// </summary>
    [AttributeUsage(AttributeTargets.Field | AttributeTargets.Property, Inherited = false)]
    public sealed class HyperAttribute : Attribute
    {
        public HyperAttribute(string key) => Key = key;

        /// <summary>A hyperparameter only a Hugging Face config states (set <see cref="HuggingFace"/>); GGUF files keep the default.</summary>
        public HyperAttribute() => Key = "";

        /// <summary>The GGUF metadata key ("" when GGUF does not carry it).</summary>
        public string Key { get; }

        /// <summary>When true, a file without the key is rejected at load.</summary>
        public bool Required { get; set; }

        /// <summary>
        /// The key in a Hugging Face config.json ("hidden_size"); a nested key is dotted ("rope_scaling.factor").
        /// Without one, a Hugging Face checkpoint keeps the default.
        /// </summary>
        public string? HuggingFace { get; set; }
    }

    /// <summary>
    /// A weight tensor bound by name from the model file, with its declared shape in row-major order
    /// (outer dimension first; a GGUF tensor with ne = [in, out] is declared as ("Out", "In")).
    /// Each dimension is a hyperparameter name, a derived integer property, a product such as "Heads*HeadDim",
    /// or a free symbol bound by the first weight that uses it (e.g. "Vocab").
    /// </summary>
    [AttributeUsage(AttributeTargets.Field | AttributeTargets.Property, Inherited = false)]
    public sealed class WeightAttribute : Attribute
    {
        public WeightAttribute(string name, params string[] shape)
        {
            Name = name;
            Shape = shape;
        }

        public string Name { get; }

        public string[] Shape { get; }

        /// <summary>Another tensor name to bind when this one is absent (e.g. output.weight tied to token_embd.weight).</summary>
        public string? TiedTo { get; set; }

        /// <summary>
        /// The tensor's name in a Hugging Face checkpoint ("model.embed_tokens.weight"; inside a [Layers] class, the
        /// part after the layers' <see cref="LayersAttribute.HuggingFace"/> prefix). A definition binds Hugging Face
        /// checkpoints when every weight names one.
        /// </summary>
        public string? HuggingFace { get; set; }

        /// <summary>How the Hugging Face checkpoint stores this weight differently from the layout the forward computes with.</summary>
        public HuggingFaceConversion FromHuggingFace { get; set; }

        /// <summary>For <see cref="HuggingFaceConversion.RopeHalvesToPairs"/>: the rows of one head, a dimension such as "HeadDim".</summary>
        public string? HeadSize { get; set; }

        /// <summary>
        /// A layer weight some layers lack (a hybrid's layer holds either its Mamba or its attention tensors): a layer
        /// without it leaves the member null. Load throws, naming the tensor and the layer, when a layer that lacks it
        /// takes a branch of the forward that reads it. Only inside a [Layers] class.
        /// </summary>
        public bool Optional { get; set; }
    }

    /// <summary>
    /// What the loader does to a weight read from a Hugging Face checkpoint so it holds what the GGUF conversion of the
    /// same checkpoint holds (what llama.cpp's converter does): the forward computes with one layout whatever the file.
    /// </summary>
    public enum HuggingFaceConversion
    {
        /// <summary>Stored as the forward uses it.</summary>
        None = 0,

        /// <summary>
        /// Each head's rows hold the rotary halves apart (Hugging Face's rotate_half); they are interleaved so the rope
        /// turns adjacent pairs, as llama.cpp's converter permutes Llama's q and k. Needs <see cref="WeightAttribute.HeadSize"/>.
        /// </summary>
        RopeHalvesToPairs = 1,

        /// <summary>Stored [in, out] (GPT-2's Conv1D); transposed to [out, in].</summary>
        Transpose = 2,

        /// <summary>A norm weight stored as its offset from one (Gemma's RMSNorm multiplies by 1 + w); one is added.</summary>
        AddOne = 3,
    }

    /// <summary>
    /// A repeated block: the field is an array of a nested partial class whose [Weight] names are prefixed with
    /// <see cref="Prefix"/> formatted with the layer index, e.g. "blk.{0}.". <see cref="Count"/> names the
    /// hyperparameter that holds the number of layers. <see cref="HuggingFace"/> is the prefix in a Hugging Face
    /// checkpoint ("model.layers.{0}.").
    /// </summary>
    [AttributeUsage(AttributeTargets.Field | AttributeTargets.Property, Inherited = false)]
    public sealed class LayersAttribute : Attribute
    {
        public LayersAttribute(string prefix, string count)
        {
            Prefix = prefix;
            Count = count;
        }

        public string Prefix { get; }

        public string Count { get; }

        /// <summary>The prefix of the block's tensors in a Hugging Face checkpoint, with {0} for the layer index.</summary>
        public string? HuggingFace { get; set; }
    }

    /// <summary>The model's forward pass over one flattened step of tokens. Run directly it executes eagerly.</summary>
    [AttributeUsage(AttributeTargets.Method, Inherited = false)]
    public sealed class ForwardAttribute : Attribute
    {
    }
}
